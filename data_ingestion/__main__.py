import sys

from data_ingestion.cli import main

sys.exit(main())
