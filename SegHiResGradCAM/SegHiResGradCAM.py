"""3D Slicer module: explain a segmentation network's segment with a CAM heatmap.

Slicer loads this file at start-up, so nothing heavy (torch, MONAI) is imported here: the
computation lives in SegHiResGradCAMLib and runs in a separate process.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class SegHiResGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Seg-HiRes-Grad CAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResGradCAM contributors"]
        self.parent.helpText = (
            "Explains what a segmentation network looked at when it segmented a chosen segment: "
            "computes a class activation map with Seg-HiRes-Grad CAM (Rheude, Wirtz, Wesarg, Kuijper: "
            "Leveraging CAM Algorithms for Explaining Medical Semantic Segmentation) or Seg-Grad CAM "
            "(Vinogradova, Dibrov, Myers, AAAI 2020) and overlays it on the CT in the CT's geometry."
        )
        self.parent.acknowledgementText = (
            "Seg-HiRes-Grad CAM builds on HiResCAM (Draelos and Carin) and Seg-Grad CAM (Vinogradova et al.)."
        )
