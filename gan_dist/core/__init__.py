"""The leaves every other layer uses: errors a user must fix, files written whole or not at
all, the pixel convention, untrusted text, precision by hardware, the Gaussian low-pass and
the classical hole prefills (diffusion and PatchMatch)."""
