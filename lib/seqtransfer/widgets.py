"""Interactive controls for JupyterLab (ipywidgets). Batch runs pass ``interactive = False``
and never build these: an ``ipywidgets.Output`` can hang papermill (nbclient issue 312)."""
from __future__ import annotations

import numpy as np
from IPython.display import display

from .data.split import activeness_groups
from .plots import activeness_histogram, lorenz_curve


def group_explorer(activeness: np.ndarray, head_frac: float = 0.2, cold_max: int = 5):
    """Sliders for the head quantile and the cold-start cut-off; shows the resulting groups
    (users, share of interactions, activeness range), the histogram and the Lorenz curve."""
    import ipywidgets as W

    frac = W.FloatSlider(value=head_frac, min=0.05, max=0.5, step=0.05, description="head share",
                         readout_format=".0%", continuous_update=False)
    cold = W.IntSlider(value=cold_max, min=1, max=50, description="cold max", continuous_update=False)

    def show(head_frac: float, cold_max: int) -> None:
        explorer_views(activeness, head_frac, cold_max)

    return W.interactive(show, head_frac=frac, cold_max=cold)


def explorer_views(activeness: np.ndarray, head_frac: float = 0.2, cold_max: int = 5) -> None:
    """What the explorer shows for one head share and cold-start cut-off: the groups' table,
    the histogram and the Lorenz curve, as plain outputs."""
    groups = activeness_groups(activeness, head_frac=head_frac, cold_max=cold_max)
    display(groups.summary(activeness).style.format(precision=3))
    display(activeness_histogram(activeness, groups.head_threshold))
    display(lorenz_curve({"activeness": activeness}, head_frac=head_frac))


def explorer_copy(activeness: np.ndarray, head_frac: float = 0.2, cold_max: int = 5) -> None:
    """A static copy of the explorer at its starting values, saved with the notebook: a widget
    view needs its kernel, so a notebook reopened after the kernel stopped shows the explorer as
    one "Error displaying widget" line; the copy below it still shows the table and both figures."""
    from IPython.display import Markdown
    display(Markdown(f"*Static copy of the explorer at head share {head_frac:.0%}, cold max {cold_max} "
                     "(what a notebook reopened without its kernel shows; the sliders above redraw live):*"))
    explorer_views(activeness, head_frac, cold_max)
