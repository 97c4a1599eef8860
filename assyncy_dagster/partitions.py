"""One dynamic partition per EPN (`12282a`)."""

import dagster as dg

EPN_PARTITIONS_NAME = "epn"

epn_partitions = dg.DynamicPartitionsDefinition(name=EPN_PARTITIONS_NAME)
