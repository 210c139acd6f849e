"""Images in and out (8/16-bit, float, DICOM, TIFF in bands), damage, packing into
WebDataset shards, and the per-rank stream that training reads."""
