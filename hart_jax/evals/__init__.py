"""Image-quality metrics: FID (Inception-v3), CLIP score, PSNR/SSIM, codebooks.

The metric networks are frozen Flax ports of public models whose weights
are read from local files (never downloaded):

  inception.py      the TF-FID / pytorch-fid Inception-v3 (pool3 features)
  resize.py         clean-fid's "clean" resize to 299 (PIL bicubic, float)
  fid.py            Frechet distance, feature statistics, sharded features
  clip.py           CLIP image and text towers, the CLIP score
  recon_metrics.py  PSNR, SSIM, codebook usage and perplexity
  sharded.py        runs a frozen network over a batch split on the mesh

The networks run replicated on every device (their parameters carry no
logical axis names: Inception is 24M and CLIP-L 430M parameters, small
next to the model being evaluated), with the batch split along the mesh's
data axes.
"""
