"""The autograder behind ``int8lab grade``; ``pipeline.py`` lists its stages.

Nothing here knows an answer: the hidden tests and reference answers live in the source
notebooks (solutions/), which only the judge reads, never the students' kernels.
"""
