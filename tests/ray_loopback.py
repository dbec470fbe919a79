"""`ray start` for a cluster that lives on 127.0.0.1 only (the two-node test).

Ray's CLI replaces a loopback ``--node-ip-address`` and ``--address`` with the machine's
outward address (``services.resolve_ip_for_localhost``), so a node started with
``ray start --node-ip-address=127.0.0.1`` would still listen on every interface. This runs the
same CLI with loopback addresses kept as given; everything else is Ray's own ``ray start``.
A driver joins such a cluster with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in its environment,
which makes Ray resolve "this machine" to 127.0.0.1 as well.

Usage: ``python tests/ray_loopback.py start --head --node-ip-address=127.0.0.1 ...``
"""
import sys

import ray._private.services as services


def _keep(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    main()
