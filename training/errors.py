"""The one error ``train.py`` prints as a line of its own."""


class UsageError(ValueError):
    """Input the program checked and refused: one line for the user, exit status 2.

    Only code that validates input raises it; any other exception is a bug
    (ours, TensorFlow's or Keras's) and keeps its traceback.
    """
