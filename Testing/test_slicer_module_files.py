"""What can be checked of the Slicer module without the Slicer application: the widget
only uses widgets that the .ui file declares, with members their classes have."""

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "SegHiResGradCAM"

# Members the widget may use, per widget class (Qt, CTK and Slicer's MRML widgets).
MEMBERS = {
    "QComboBox": {"addItem", "clear", "currentText"},
    "QCheckBox": {"checked", "connect"},
    "QPushButton": {"text", "enabled", "connect"},
    "QLabel": {"text"},
    "QLineEdit": {"text", "connect"},
    "QProgressBar": {"value"},
    "qMRMLNodeComboBox": {"currentNode", "setMRMLScene"},
    "qMRMLSegmentSelectorWidget": {"currentNode", "currentSegmentID", "setDisabled", "setMRMLScene"},
    "ctkPathLineEdit": {"currentPath", "connect"},
}


def declared_widgets() -> dict[str, str]:
    tree = ElementTree.parse(MODULE / "Resources" / "UI" / "SegHiResGradCAM.ui")
    return {widget.get("name"): widget.get("class") for widget in tree.iter("widget")}


def test_every_ui_name_the_widget_uses_is_declared_with_a_fitting_class():
    widgets = declared_widgets()
    source = (MODULE / "SegHiResGradCAM.py").read_text()
    uses = re.findall(r"self\.ui\.(\w+)(?:\.(\w+))?", source)
    assert len(uses) > 20
    for name, member in uses:
        assert name in widgets, f"self.ui.{name} is not in the .ui file"
        if member:
            assert member in MEMBERS[widgets[name]], f"self.ui.{name}.{member}: not a {widgets[name]} member"


def test_the_ui_declares_the_controls_the_module_needs():
    widgets = declared_widgets()
    needed = {"inputVolumeSelector": "qMRMLNodeComboBox", "segmentSelector": "qMRMLSegmentSelectorWidget",
              "usePredictionCheckBox": "QCheckBox", "targetClassComboBox": "QComboBox", "methodComboBox": "QComboBox",
              "layerComboBox": "QComboBox", "deviceComboBox": "QComboBox", "modelPathLineEdit": "ctkPathLineEdit",
              "applyButton": "QPushButton", "compareButton": "QPushButton", "progressBar": "QProgressBar",
              "statusLabel": "QLabel", "trustBundleCheckBox": "QCheckBox", "foldsLineEdit": "QLineEdit"}  # fmt: skip
    assert {name: widgets.get(name) for name in needed} == needed
