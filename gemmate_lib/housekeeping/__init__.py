"""The course's own housekeeping, which no lesson teaches: errors, files, the machine (hardware),
Colab, the token, the run folder, the self-check and the exercise checks that every
notebook (00-07) uses. A reader can skip it."""
