"""How repairs are scored: hole PSNR/SSIM, hole SWD, FID/KID/LPIPS, the validation pass
over shards, and the same metrics over one whole image."""
