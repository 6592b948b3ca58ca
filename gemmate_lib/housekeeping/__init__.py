"""The course's own housekeeping, which no lesson teaches: errors, files, Colab, the token, the run folder and
the self-check that every notebook (00-07) uses (the machine is the lesson module hardware.py). A reader can
skip it."""
