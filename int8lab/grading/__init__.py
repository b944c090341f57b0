"""The autograder behind ``int8lab grade``: nbgrader's autograde, per submission, isolated and in parallel.

Nothing here knows an answer: the reference answers live in the hidden tests of the source
notebooks, which the sandboxed kernels cannot read.
"""
