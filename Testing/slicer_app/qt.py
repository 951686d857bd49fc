"""Stand-ins for the Qt classes the module uses, as PythonQt exposes them: properties are
attributes (``combo.currentIndex = 2``), a signal is connected either by its signature
(``widget.connect("clicked(bool)", slot)``) or as an attribute (``widget.clicked.connect``),
and both kinds of connection share one list, called in connection order.

What each setter emits follows Qt's documentation: a programmatic change emits the
"changed" signals (``currentIndexChanged``, ``toggled``, ``textChanged``, ``valueChanged``)
only when the value really changes, never the user-only signals (``activated``,
``clicked``, ``textEdited``, ``editingFinished``). ``blockSignals(True)`` silences all of
them. The ``user_*`` methods are what a person's mouse and keyboard do.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import traceback
from typing import ClassVar

SLOT_ERRORS: list[str] = []  # tracebacks of slots that raised (PythonQt prints them and goes on)


def _positional_count(slot) -> int | None:
    """How many arguments a Python slot takes; None when it takes any number."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind == parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def notifying_property(attribute: str, signal: str, convert=lambda value: value):
    """A Qt property whose setter stores the converted value and emits ``signal`` with it,
    only when it changes (as Qt's setters do)."""

    def set_value(self, value):
        value = convert(value)
        if value != getattr(self, attribute):
            setattr(self, attribute, value)
            getattr(self, signal).emit(value)

    return builtins.property(lambda self: getattr(self, attribute), set_value)


class Signal:
    """One signal of one object. PythonQt calls a Python slot with as many of the signal's
    arguments as the slot accepts; an exception in a slot is printed and does not reach
    the code that emitted the signal."""

    def __init__(self, owner: QObject, name: str):
        self._owner = owner
        self.name = name
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot=None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *arguments) -> None:
        if self._owner.signalsBlocked():
            return
        for slot in list(self._slots):
            count = _positional_count(slot)
            try:
                slot(*(arguments if count is None else arguments[:count]))
            except Exception:
                SLOT_ERRORS.append(traceback.format_exc())
                logging.getLogger("qt-stand-in").error("slot raised:\n%s", SLOT_ERRORS[-1])


class QObject:
    SIGNALS: tuple[str, ...] = ()

    def __init__(self, parent=None):
        self._blocked = False
        self._dynamic: dict = {}
        self._children: list = []
        self._parent = None
        self.name = ""
        for cls in type(self).__mro__:
            for signal in getattr(cls, "SIGNALS", ()):
                if signal not in self.__dict__:
                    setattr(self, signal, Signal(self, signal))
        if parent is not None:
            self.setParent(parent)

    def setParent(self, parent) -> None:
        self._parent = parent
        parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls) -> list:
        found = []
        for child in self._children:
            if isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def connect(self, signature: str, slot) -> bool:
        name = signature.split("(", 1)[0].strip()
        signal = getattr(self, name, None)
        if not isinstance(signal, Signal):
            raise AttributeError(f"{type(self).__name__} has no signal {signature}")
        signal.connect(slot)
        return True

    def disconnect(self, signature: str, slot=None) -> None:
        getattr(self, signature.split("(", 1)[0].strip()).disconnect(slot)

    def blockSignals(self, block: bool) -> bool:
        previous, self._blocked = self._blocked, bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._blocked

    def setProperty(self, name: str, value) -> None:
        self._dynamic[name] = value

    def property(self, name: str):
        return self._dynamic.get(name)

    def objectName(self) -> str:
        return self.name

    def className(self) -> str:
        return type(self).__name__


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._visible = True
        self._enabled = True
        self.toolTip = ""
        self._layout = None

    def isWidgetType(self) -> bool:
        return True

    visible = builtins.property(lambda self: self._visible, lambda self, value: self.setVisible(value))
    enabled = builtins.property(lambda self: self._enabled, lambda self, value: self.setEnabled(value))

    def setVisible(self, visible: bool) -> None:
        self._visible = bool(visible)

    def show(self) -> None:
        self.setVisible(True)

    def hide(self) -> None:
        self.setVisible(False)

    def isVisible(self) -> bool:
        return self._visible

    def setEnabled(self, enabled: bool) -> None:
        self._enabled = bool(enabled)

    def setDisabled(self, disabled: bool) -> None:
        self.setEnabled(not disabled)

    def isEnabled(self) -> bool:
        return self._enabled

    def setLayout(self, layout) -> None:
        self._layout = layout

    def layout(self):
        if self._layout is None:
            self._layout = QVBoxLayout(self)
        return self._layout

    def setMRMLScene(self, scene) -> None:  # qMRMLWidget's slot; plain widgets ignore it here
        pass


class QVBoxLayout(QObject):
    def __init__(self, parent=None):
        super().__init__()
        self._owner = parent
        self.widgets: list = []

    def addWidget(self, widget, *arguments) -> None:
        self.widgets.append(widget)
        if self._owner is not None and widget.parent() is None:
            widget.setParent(self._owner)

    def addStretch(self, *arguments) -> None:
        pass


class QLabel(QWidget):
    def __init__(self, text_or_parent=None, parent=None):  # QLabel(parent) or QLabel(text, parent)
        text = text_or_parent if isinstance(text_or_parent, str) else ""
        super().__init__(parent if isinstance(text_or_parent, str) else text_or_parent)
        self.text = text
        self.wordWrap = False
        self.alignment = 0


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "pressed", "released", "toggled")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""
        self.checkable = False
        self._checked = False

    checked = builtins.property(lambda self: self._checked, lambda self, value: self.setChecked(value))

    def setChecked(self, checked: bool) -> None:
        checked = bool(checked)
        if checked == self._checked:
            return
        self._checked = checked
        self._state_changed()
        self.toggled.emit(checked)

    def _state_changed(self) -> None:
        pass

    def click(self) -> None:
        """A mouse click: nothing on a disabled button; else toggles a checkable button,
        then emits clicked."""
        if not self._enabled:
            return
        self.pressed.emit()
        self.released.emit()
        if self.checkable:
            self.setChecked(not self._checked)
        self.clicked.emit(self._checked)

    user_click = click


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    SIGNALS = ("stateChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = True

    def _state_changed(self) -> None:
        # QCheckBox emits stateChanged from checkStateSet(), before QAbstractButton emits toggled.
        self.stateChanged.emit(2 if self._checked else 0)


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items: list[list] = []  # [text, data]
        self._index = -1

    currentIndex = builtins.property(lambda self: self._index, lambda self, index: self.setCurrentIndex(index))

    def setCurrentIndex(self, index: int) -> None:
        index = index if 0 <= index < len(self._items) else -1
        if index == self._index:
            return
        self._index = index
        self.currentIndexChanged.emit(index)
        self.currentTextChanged.emit(self.currentText)

    @builtins.property
    def currentText(self) -> str:
        return self._items[self._index][0] if self._index >= 0 else ""

    def count(self) -> int:
        return len(self._items)

    def addItem(self, text: str, data=None) -> None:
        self._items.append([str(text), data])
        if self._index < 0:  # the first item becomes current, as in a QComboBox with a model
            self.setCurrentIndex(0)

    def clear(self) -> None:
        had_items = bool(self._items)
        self._items = []
        if had_items:
            self._index = -1
            self.currentIndexChanged.emit(-1)
            self.currentTextChanged.emit("")

    def itemText(self, index: int) -> str:
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def itemData(self, index: int):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def findData(self, data) -> int:
        return next((index for index, item in enumerate(self._items) if item[1] == data), -1)

    def findText(self, text: str) -> int:
        return next((index for index, item in enumerate(self._items) if item[0] == text), -1)

    def user_choose(self, text: str) -> None:
        """Picks an entry from the drop-down list, as a person does."""
        index = self.findText(text)
        if index < 0:
            raise ValueError(f"{self.name} has no entry {text!r}: {[item[0] for item in self._items]}")
        if not self._enabled:
            raise RuntimeError(f"{self.name} is disabled")
        self.setCurrentIndex(index)
        self.activated.emit(index)


class QLineEdit(QWidget):
    SIGNALS = ("textChanged", "textEdited", "editingFinished", "returnPressed")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self.placeholderText = ""

    text = builtins.property(lambda self: self._text, lambda self, text: self.setText(text))

    def setText(self, text: str) -> None:
        text = str(text)
        if text == self._text:
            return
        self._text = text
        self.textChanged.emit(text)

    def _user_edit(self, text: str) -> None:
        self._text = text
        self.textEdited.emit(text)
        self.textChanged.emit(text)

    def user_type(self, text: str, finish: bool = True) -> None:
        """Clears the field and types ``text`` key by key, then presses Enter."""
        if self._text:
            self._user_edit("")
        for end in range(1, len(text) + 1):
            self._user_edit(text[:end])
        if finish:
            self.returnPressed.emit()
            self.editingFinished.emit()


class QPlainTextEdit(QWidget):
    SIGNALS = ("textChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.lines: list[str] = []
        self.readOnly = False

    def appendPlainText(self, text: str) -> None:
        self.lines.append(str(text))
        self.textChanged.emit()

    def clear(self) -> None:
        self.lines = []
        self.textChanged.emit()

    def toPlainText(self) -> str:
        return "\n".join(self.lines)


class QProgressBar(QWidget):
    SIGNALS = ("valueChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self._value = 0, 100, 0

    value = notifying_property("_value", "valueChanged", int)


class QSlider(QWidget):
    SIGNALS = ("valueChanged", "sliderMoved")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum, self._value = 0, 99, 0
        self.orientation = 1

    def _clamp(self) -> None:
        self.value = min(max(self._value, self._minimum), self._maximum)

    minimum = builtins.property(
        lambda self: self._minimum, lambda self, value: (setattr(self, "_minimum", int(value)), self._clamp())
    )
    maximum = builtins.property(
        lambda self: self._maximum, lambda self, value: (setattr(self, "_maximum", int(value)), self._clamp())
    )

    @builtins.property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        value = min(max(int(value), self._minimum), self._maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def user_drag(self, value: int) -> None:
        self.sliderMoved.emit(value)
        self.value = value


class Qt:
    DisplayRole, ToolTipRole, UserRole = 0, 3, 256
    AscendingOrder, DescendingOrder = 0, 1
    WaitCursor, ArrowCursor = 3, 0
    AlignCenter, AlignLeft = 0x84, 0x1
    Horizontal, Vertical = 1, 2
    ItemIsSelectable, ItemIsEnabled = 1, 32


class QAbstractItemView:
    NoEditTriggers = 0
    SelectRows = 1
    SingleSelection = 1


class QTableWidgetItem:
    def __init__(self, text=None):
        self._data: dict = {}
        if text is not None:
            self._data[Qt.DisplayRole] = str(text)
        self._flags = Qt.ItemIsSelectable | Qt.ItemIsEnabled

    def setData(self, role: int, value) -> None:
        self._data[role] = value

    def data(self, role: int):
        return self._data.get(role)

    def text(self) -> str:
        value = self._data.get(Qt.DisplayRole)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # QVariant(double(3.0)).toString() is "3"
        return "" if value is None else str(value)

    def setText(self, text: str) -> None:
        self._data[Qt.DisplayRole] = str(text)

    def setToolTip(self, text: str) -> None:
        self._data[Qt.ToolTipRole] = text

    def toolTip(self) -> str:
        return self._data.get(Qt.ToolTipRole) or ""

    def setForeground(self, brush) -> None:
        self._data["foreground"] = brush

    def setBackground(self, brush) -> None:
        self._data["background"] = brush

    def background(self):
        return self._data.get("background")

    def setFlags(self, flags: int) -> None:
        self._flags = flags

    def flags(self) -> int:
        return self._flags

    def __lt__(self, other: QTableWidgetItem) -> bool:
        # QTableWidgetItem::operator< compares the display data: numbers as numbers.
        mine, theirs = self.data(Qt.DisplayRole), other.data(Qt.DisplayRole)
        if isinstance(mine, int | float) and isinstance(theirs, int | float):
            return mine < theirs
        return str("" if mine is None else mine) < str("" if theirs is None else theirs)


class QBrush:
    def __init__(self, color=None):
        self.color = color


class QColor:
    def __init__(self, *arguments):
        self.arguments = arguments


class QHeaderView(QObject):
    SIGNALS = ("sortIndicatorChanged", "sectionClicked")

    def __init__(self, table):
        super().__init__()
        self._table = table
        # QHeaderViewPrivate starts with section 0 and Qt::DescendingOrder.
        self._section, self._order = 0, Qt.DescendingOrder
        self.sortIndicatorShown = False

    def sortIndicatorSection(self) -> int:
        return self._section

    def sortIndicatorOrder(self) -> int:
        return self._order

    def setSortIndicator(self, section: int, order: int) -> None:
        changed = (section, order) != (self._section, self._order)
        self._section, self._order = section, order
        if changed:
            self.sortIndicatorChanged.emit(section, order)
            if self._table.isSortingEnabled():
                self._table.sortItems(section, order)

    def setSectionResizeMode(self, *arguments) -> None:
        pass

    def setStretchLastSection(self, stretch: bool) -> None:
        pass

    def user_click_section(self, section: int) -> None:
        """A click on a column header of a sortable table: the same column again reverses the
        order; another column starts ascending."""
        self.sectionClicked.emit(section)
        if self._table.isSortingEnabled():
            order = 1 - self._order if section == self._section else Qt.AscendingOrder
            self.setSortIndicator(section, order)


class QTableWidget(QWidget):
    """Rows are kept as lists of items; the selection follows its row when the table is
    sorted (Qt keeps persistent indexes), as does the current row."""

    SIGNALS = ("itemSelectionChanged", "currentCellChanged", "cellClicked", "cellDoubleClicked")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list[list] = []
        self._columns = 0
        self._labels: list[str] = []
        self._sorting = False
        self._current = None  # the current row's list (identity), or None
        self._header = QHeaderView(self)
        self.editTriggers = self.selectionBehavior = self.selectionMode = None

    def horizontalHeader(self) -> QHeaderView:
        return self._header

    def setEditTriggers(self, triggers) -> None:
        self.editTriggers = triggers

    def setSelectionBehavior(self, behaviour) -> None:
        self.selectionBehavior = behaviour

    def setSelectionMode(self, mode) -> None:
        self.selectionMode = mode

    @builtins.property
    def rowCount(self) -> int:
        return len(self._rows)

    @builtins.property
    def columnCount(self) -> int:
        return self._columns

    def setColumnCount(self, count: int) -> None:
        self._columns = count
        for row in self._rows:
            row[:] = (row + [None] * count)[:count]

    def setRowCount(self, count: int) -> None:
        while len(self._rows) > count:
            removed = self._rows.pop()
            if removed is self._current:
                self._set_current(None)
        while len(self._rows) < count:
            self._rows.append([None] * self._columns)

    def setHorizontalHeaderLabels(self, labels) -> None:
        self._labels = list(labels)

    def horizontalHeaderItemText(self, column: int) -> str:
        return self._labels[column] if column < len(self._labels) else ""

    def clearContents(self) -> None:
        for row in self._rows:
            row[:] = [None] * self._columns

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        self._rows[row][column] = item
        if self._sorting and column == self._header.sortIndicatorSection():
            self.sortItems(self._header.sortIndicatorSection(), self._header.sortIndicatorOrder())

    def item(self, row: int, column: int):
        if 0 <= row < len(self._rows) and 0 <= column < self._columns:
            return self._rows[row][column]
        return None

    def setSortingEnabled(self, enabled: bool) -> None:
        self._sorting = bool(enabled)
        if enabled:  # QTableView sorts at once by the header's indicator
            self.sortItems(self._header.sortIndicatorSection(), self._header.sortIndicatorOrder())

    def isSortingEnabled(self) -> bool:
        return self._sorting

    def sortItems(self, column: int, order: int = Qt.AscendingOrder) -> None:
        self._header._section, self._header._order = column, order
        filled = [row for row in self._rows if row[column] is not None]
        empty = [row for row in self._rows if row[column] is None]
        filled.sort(key=lambda row: _SortKey(row[column]), reverse=order == Qt.DescendingOrder)
        self._rows = filled + empty  # empty cells stay at the end, as in Qt

    def currentRow(self) -> int:
        return next((index for index, row in enumerate(self._rows) if row is self._current), -1)

    def _set_current(self, row) -> None:
        previous = self.currentRow()
        if row is self._current:
            return
        self._current = row
        self.currentCellChanged.emit(self.currentRow(), 0, previous, 0)
        self.itemSelectionChanged.emit()

    def selectRow(self, row: int) -> None:
        if 0 <= row < len(self._rows):
            self._set_current(self._rows[row])

    def setCurrentCell(self, row: int, column: int) -> None:
        self.selectRow(row)

    def clearSelection(self) -> None:
        self._set_current(None)

    def user_click_row(self, row: int) -> None:
        self.cellClicked.emit(row, 0)
        self.selectRow(row)

    def column_texts(self, column: int) -> list[str]:
        return [row[column].text() if row[column] is not None else "" for row in self._rows]


class _SortKey:
    def __init__(self, item):
        self.item = item

    def __lt__(self, other):
        return self.item < other.item


class QTimer(QObject):
    """Fires only when the test lets time pass (``Application.process_events``)."""

    SIGNALS = ("timeout",)
    ALL: ClassVar[list] = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._active = False
        QTimer.ALL.append(self)

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self, milliseconds: int | None = None) -> None:
        if milliseconds is not None:
            self.interval = milliseconds
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active

    def fire(self) -> None:
        if self._active:
            if self.singleShot_:
                self._active = False
            self.timeout.emit()

    @staticmethod
    def singleShot(milliseconds: int, slot) -> None:
        timer = QTimer()
        timer.singleShot_ = True
        timer.timeout.connect(slot)
        timer.start(milliseconds)


class QSettings:
    """Slicer's settings file; the harness keeps one store per test, across widget
    instances, as the file outlives a Slicer session."""

    STORE: ClassVar[dict] = {}

    def value(self, key: str, default=None):
        return QSettings.STORE.get(key, default)

    def setValue(self, key: str, value) -> None:
        QSettings.STORE[key] = value

    def contains(self, key: str) -> bool:
        return key in QSettings.STORE

    def remove(self, key: str) -> None:
        QSettings.STORE.pop(key, None)


class QMessageBox:
    Ok, Cancel, Yes, No = 0x400, 0x400000, 0x4000, 0x10000
    Critical, Warning, Information, Question = 3, 2, 1, 4


class QCursor:
    def __init__(self, shape=None):
        self.shape = shape


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)


def tr(text: str) -> str:
    return text
