"""The autograder behind ``int8lab grade``; ``pipeline.py`` lists its stages.

Nothing here knows an answer: the hidden tests and reference answers live in the source
notebooks (solutions/), which only the judge reads, never the students' kernels.
"""

import sys

# jsonschema (nbformat's validator) imports rfc3987_syntax when it is installed (jupyter-events asks for it), and
# that module builds a lark grammar as it loads: 1-1.8 s of CPU in every grader process (client, Dask worker,
# judge process, pool worker; `python -X importtime -c "import jsonschema"`). Its formats (iri, iri-reference)
# are in no schema the grader validates, so grader processes go without it: jsonschema then skips those formats.
sys.modules.setdefault("rfc3987_syntax", None)
