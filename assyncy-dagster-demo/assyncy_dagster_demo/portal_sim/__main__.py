"""`python -m assyncy_dagster_demo.portal_sim`, the same as `assyncy portal-sim`."""

import sys

from .cli import main

sys.exit(main())
