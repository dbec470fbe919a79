"""The ``seqtransfer`` command: a thin argparse wrapper over library functions.

    seqtransfer run [--budget smoke|quick|full] [--only NAME ...] [--out DIR] [--jobs N]
                    [-p NAME VALUE]... [--device cpu|cuda|auto] [--timeout SECONDS]
    seqtransfer fetch NAME [NAME ...] [--data-dir DIR]
    seqtransfer bench ...                 (arguments go to seqtransfer.bench.main)
    seqtransfer nbval-refs [NAME ...] [--dest DIR] [--timeout SECONDS]

Library modules are imported inside the commands, so ``seqtransfer fetch`` does not wait for
papermill and nbconvert to import.
"""
from __future__ import annotations

import argparse
import ast
import logging
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit status 2), without the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_value(text: str):
    """A ``-p`` value: a Python literal where it parses as one (3, 0.1, True, [1, 2]), else
    the string itself (``-p backbone gru4rec``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqtransfer",
                     description="Research workbench for transferable sequential recommendation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="execute the notebooks, write HTML reports and an index")
    # budget, device and names are checked by batch.run_batch, the one place that knows them
    run.add_argument("--budget", default="quick",
                     help="size of every run: smoke (tests, seconds), quick (the default: ML-100K, "
                          "every model early-stopped with its lr chosen on validation; 00-03 in about 45 min "
                          "on a 2-core CPU with --jobs 2) or full (ML-1M paper scale, 3 seeds; a GPU)")
    run.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks")
    run.add_argument("--out", default="reports/latest", help="output folder (default %(default)s)")
    run.add_argument("--jobs", type=int, default=1, help="notebooks run at once, each kernel with its "
                     "share of the cores (default 1)")
    run.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="extra notebook parameter; VALUE is a Python literal or a string")
    run.add_argument("--device", default="auto", help="cpu, cuda or auto (the default)")
    run.add_argument("--timeout", type=float, help="per-cell timeout in seconds "
                                                   "(default: by budget)")
    run.add_argument("--executor", help="where the notebooks' runs train: local (the default: in "
                     "each kernel) or ray (Ray tasks in parallel; needs pip install -e '.[ray]')")
    run.add_argument("--ray-address", help="with --executor ray: empty (the default: a local Ray "
                     "on this machine), auto (the cluster this machine belongs to), host:6379 or "
                     "ray://host:10001")

    fetch = commands.add_parser("fetch", help="download and cache datasets")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--data-dir", help="cache folder (default data/ of the checkout)")

    # bench parses its own arguments; add_help=False lets `seqtransfer bench --help` reach it
    commands.add_parser("bench", add_help=False,
                        help="speed benchmark (see seqtransfer bench --help)")

    refs = commands.add_parser("nbval-refs", help="re-make the nbval reference notebooks "
                                                  "(smoke budget, CPU)")
    refs.add_argument("names", nargs="*", metavar="NAME", help="only these notebooks (default: all)")
    refs.add_argument("--only", nargs="+", metavar="NAME", help="only these notebooks (same as NAME)")
    refs.add_argument("--dest", default="tests/notebooks", help="folder (default %(default)s)")
    refs.add_argument("--timeout", type=float, help="per-cell timeout in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``seqtransfer`` console script; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from seqtransfer import bench
        return bench.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # progress lines of seqtransfer only (a bar on a terminal, see seqtransfer.progress);
    # papermill's own INFO lines would drown them
    logging.basicConfig(format="%(message)s")
    logging.getLogger("seqtransfer").setLevel(logging.INFO)
    return {"run": _run, "fetch": _fetch, "nbval-refs": _nbval_refs}[args.command](args)


def _run(args: argparse.Namespace) -> int:
    from seqtransfer import batch

    params = {name: parse_value(value) for name, value in args.p}
    if args.ray_address is not None and args.executor != "ray":
        print("seqtransfer run: --ray-address needs --executor ray", file=sys.stderr)
        return 2
    if args.executor is not None:
        from seqtransfer.executor import check_executor
        try:
            params["executor"] = check_executor(args.executor)
        except ValueError as err:
            print(f"seqtransfer run: {err}", file=sys.stderr)
            return 2
        if args.executor == "ray":
            params["ray_address"] = args.ray_address or ""
    try:
        status = batch.run_batch(names=args.only, budget=args.budget, out=args.out,
                                 jobs=args.jobs, params=params, device=args.device,
                                 timeout=args.timeout)
    except batch.BatchError as err:
        print(f"seqtransfer run: {err}", file=sys.stderr)
        return 2
    except batch.BatchInterrupted as stop:
        _print_status(stop.status, Path(args.out))
        print("seqtransfer run: interrupted. The finished notebooks' reports are in the index; "
              "finished model runs are in the run cache, so the same command continues from them.",
              file=sys.stderr)
        return 130
    _print_status(status, Path(args.out))
    return 0 if (status["status"] == "ok").all() else 1


def _print_status(status, out: Path) -> None:
    table = status.assign(error=status["error"].str.slice(0, 100))
    print(table[["notebook", "status", "seconds", "error"]].to_string(index=False))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"index: {(out / 'index.html').resolve()} (the folder holds {size / 2**20:.1f} MB)")


def _fetch(args: argparse.Namespace) -> int:
    from seqtransfer.data import fetch

    for name in args.names:
        try:
            print(fetch(name, args.data_dir))
        except ValueError as err:  # unknown name
            print(f"seqtransfer fetch: {err}", file=sys.stderr)
            return 2
        except RuntimeError as err:  # download or checksum failure, already explained
            print(f"seqtransfer fetch: {err}", file=sys.stderr)
            return 1
    return 0


def _nbval_refs(args: argparse.Namespace) -> int:
    from seqtransfer import batch

    try:
        names = [*args.names, *(args.only or [])] or None
        written = batch.make_nbval_refs(names=names, dest=args.dest, timeout=args.timeout)
    except batch.BatchError as err:
        print(f"seqtransfer nbval-refs: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"seqtransfer nbval-refs: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
