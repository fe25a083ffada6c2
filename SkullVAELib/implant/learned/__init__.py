"""The learned facial refiner: a small 3D U-Net on a face crop at 1 mm (issue 9, lever 4).

Input: the defective skull on an LPS-aligned isotropic grid (:mod:`.lps_grid`), cropped around
the face by anchors the facial defect leaves in place (:mod:`.crop`). Output: the implant's
probability in the crop, resampled back onto the patient's exact grid (:mod:`.infer`).
Trained on complete training skulls with facial defects drawn afresh on the GPU every step
(:mod:`.draw`, :mod:`.train`). Only :mod:`.lps_grid`, :mod:`.data` and :mod:`.infer` need
SimpleITK, so the trainer runs on a GPU machine that has torch alone.
"""
