"""The learned cranial residual: a 3D U-Net that corrects the rim fit's implant inside the hole.

config (settings and weights file), features (what the network sees; the way back to the patient's
grid), pool (training samples), train (on the one training loop), infer (one patient).
"""
