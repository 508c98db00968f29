"""A module whose import has effects, as an attacker would name in a record's topic:
decoding must never import it. (It ends the process that imports it.)"""

import os

os.environ["CAIRN_GADGET_IMPORTED"] = "1"
raise SystemExit("tests.gadget_import was imported because a record named it")
