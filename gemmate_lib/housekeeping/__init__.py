"""The course's own housekeeping, which no lesson teaches: errors, files, the machine (its facts and memory
lines; the precision choice is the lesson module hardware.py), Colab, the token, the run folder and the
self-check that every notebook (00-07) uses. A reader can skip it."""
