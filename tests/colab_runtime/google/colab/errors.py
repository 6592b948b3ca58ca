class Error(Exception):
    """Colab's base error."""
