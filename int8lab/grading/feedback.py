"""An nbgrader preprocessor for ``generate_feedback``: feedback never shows a hidden test."""

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from .notebooks import redact_hidden_tests


class RedactHiddenTests(Preprocessor):
    """Strip hidden-test regions, test tracebacks and echoed hidden lines (see ``redact_hidden_tests``)."""

    # nbconvert registers preprocessors named in config as disabled unless they say otherwise.
    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb, resources):
        redact_hidden_tests(nb)
        return nb, resources
