"""Data layer: real datasets -> tidy interactions -> leave-one-out split -> padded tensors.

Knows nothing of models.
"""
from .atomic import ATOMIC_DATASETS, load_atomic
from .batches import SeqData, build_sequences, eval_sample, trim_right
from .crossdomain import CrossDomain, dataset_setting, domain_sequences, genre_setting
from .domains import combine, domain_table, genre_domains, genre_subset
from .features import ItemFeatures, item_features
from .fetch import KNOWN_DATASETS, default_data_dir, fetch
from .loaders import DataError, Interactions, load, recent_share, sample_users, subset
from .split import (Split, UserGroups, activeness_groups, leave_one_out, lorenz, strata,
                    truncate_histories)
