"""Files in and out with exact geometry: input checks, images, segmentations, STL, output safety."""
