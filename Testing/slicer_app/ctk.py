"""Stand-ins for the CTK widgets of the module's .ui, read in CTK's source
(Libs/Widgets/ctkPathLineEdit.cpp, Libs/Core/ctkUtils.cpp at commontk/CTK 868d56c7)."""

from __future__ import annotations

import fnmatch
import re

from . import qt


def name_filters_pattern(name_filters: list[str]) -> str:
    """ctk::nameFiltersToRegExpPattern: the extensions of "Model card (*.json)" become an
    alternation; no extension gives ".+" (any nonempty text)."""
    patterns = []
    for name_filter in name_filters:
        inside = re.search(r"\(([^)]*)\)", name_filter)
        for extension in (inside.group(1) if inside else name_filter).split():
            patterns.append(fnmatch.translate(extension).removeprefix("(?s:").removesuffix(")\\Z"))
    return "(" + "|".join(patterns) + ")" if patterns else ".+"


class ctkPathLineEdit(qt.QWidget):
    """The text is the current path. Its QRegularExpressionValidator accepts a text that
    matches the name filters (or any nonempty text without them); on every text change,
    typed or set, an acceptable text emits currentPathChanged (updateHasValidInput, which
    is connected to the line edit's textChanged). An empty text emits nothing."""

    SIGNALS = ("currentPathChanged", "validInputChanged")
    Files, Dirs, Readable = 0x2, 0x1, 0x10

    def __init__(self, parent=None):
        super().__init__(parent)
        self._line = qt.QLineEdit()
        self._line.textChanged.connect(self._update_has_valid_input)
        self.nameFilters: list[str] = []
        self.filters = 0
        self._valid = False

    def _acceptable(self, text: str) -> bool:
        return re.fullmatch(name_filters_pattern(self.nameFilters), text) is not None

    def _update_has_valid_input(self, text: str) -> None:
        valid = self._acceptable(text)
        if valid:
            self.currentPathChanged.emit(text)
        if valid != self._valid:
            self._valid = valid
            self.validInputChanged.emit(valid)

    @property
    def currentPath(self) -> str:
        return self._line.text

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        self.setCurrentPath(path)

    def setCurrentPath(self, path: str) -> None:
        self._line.setText(str(path))

    def user_type(self, text: str) -> None:
        """Types the path key by key (each keystroke is a text change)."""
        self._line.user_type(text)

    def user_browse(self, path: str) -> None:
        """Picks the path in the file dialog: the whole text is set at once."""
        self.setCurrentPath(path)


class ctkCollapsibleButton(qt.QAbstractButton):
    SIGNALS = ("contentsCollapsed",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = True
        self._collapsed = False

    collapsed = qt.notifying_property("_collapsed", "contentsCollapsed", bool)


class ctkCheckBox(qt.QCheckBox):
    pass


class ctkComboBox(qt.QComboBox):
    pass
