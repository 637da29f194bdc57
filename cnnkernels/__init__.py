"""cnnkernels."""
