"""An nbgrader preprocessor for ``generate_feedback``: feedback never shows a hidden test."""

from nbconvert.preprocessors import Preprocessor

from .notebooks import redact_hidden_tests


class RedactHiddenTests(Preprocessor):
    """Strip hidden-test regions, test tracebacks and echoed hidden lines (see ``redact_hidden_tests``)."""

    def preprocess(self, nb, resources):
        redact_hidden_tests(nb)
        return nb, resources
