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
        groups = activeness_groups(activeness, head_frac=head_frac, cold_max=cold_max)
        display(groups.summary(activeness).style.format(precision=3))
        display(activeness_histogram(activeness, groups.head_threshold))
        display(lorenz_curve({"activeness": activeness}, head_frac=head_frac))

    return W.interactive(show, head_frac=frac, cold_max=cold)
