"""sitecustomize.py here runs only in the child process of llama.cpp's converter (export.convert:
`gemmate export` and notebook 05)."""
