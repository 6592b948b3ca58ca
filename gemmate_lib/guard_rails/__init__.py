"""The learner's guard rails, in every notebook (00-07): errors that name the problem and the fix, files
written whole, Colab (Drive, secrets, the install), the token (never printed), the run folder and its
manifest, the self-check. The lesson modules import them; they import no lesson module. (The other guard
rails read what the lessons compute, so they sit beside them: fit, the fit line; reference, "is my run
normal?"; exercises/, the exercise checks.)"""
