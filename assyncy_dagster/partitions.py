"""One dynamic partition per EPN (`12282a`)."""

import dagster as dg

from .names import EPN_PARTITIONS_NAME

__all__ = ["EPN_PARTITIONS_NAME", "epn_partitions"]

epn_partitions = dg.DynamicPartitionsDefinition(name=EPN_PARTITIONS_NAME)
