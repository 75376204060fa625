"""Input/output: image and DICOM decoding with limits, upload guards."""
