import sys

from schoolvision.cli import main

sys.exit(main())
