"""The grading kernel: an IPython kernel that installs tamper detection before running any cell.

python -m int8lab.grading.kernel -f CONNECTION_FILE
"""

import sys

# Imported first, so that the snapshot sees the real functions before a student's cell runs.
import int8lab.checks  # noqa: F401
import int8lab.grading.integrity  # noqa: F401

STARTUP = "import int8lab.grading.integrity as _int8lab_integrity; _int8lab_integrity.install(); del _int8lab_integrity"

if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=[*sys.argv[1:], f"--IPKernelApp.exec_lines={STARTUP}"])
