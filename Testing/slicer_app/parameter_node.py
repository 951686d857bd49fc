"""A stand-in for ``slicer.parameterNodeWrapper``, written from what Slicer's
Base/Python/slicer/parameterNodeWrapper/ (wrapper.py, guiConnectors.py, validators.py at
commit 583e9b37d5) does, not from its code:

- the wrapped class's annotated fields live in a real vtkMRMLScriptedModuleNode; a field
  not yet in the node gets its default when the wrapper is made;
- ``connectGui(gui)`` finds the widgets through their ``SlicerParameterName`` property
  (``gui.__dict__`` for the ``self.ui`` namespace, ``findChildren`` for a widget), makes one
  connector per widget by its exact class, and for each: writes the parameter's value into
  the widget, *then* connects the widget's change signal (so the connector's slot comes
  after every slot connected earlier, e.g. by the module's setup());
- a Choice-annotated combo box is cleared and refilled with the choices when its
  connector is made, i.e. on every connectGui;
- a widget change writes the parameter inside a StartModify/EndModify pair, unless the
  wrapper is itself updating the GUI; every ModifiedEvent of the node (any parameter's
  change, from anywhere) writes every parameter back into every connected widget;
- ``disconnectGui(tag)`` disconnects the connectors and the node observer.
"""

from __future__ import annotations

import pathlib
import typing

import slicer
import vtk

from . import ctk, mrml_widgets, qt

NAME_PROPERTY = "SlicerParameterName"


class Choice:
    def __init__(self, choices):
        self.choices = tuple(choices)


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _is_node_type(base) -> bool:
    return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)


class _Field:
    def __init__(self, name, annotation, default):
        self.name = name
        self.base, extras = _split(annotation)
        self.choice = next((extra for extra in extras if isinstance(extra, Choice)), None)
        primitive = self.base in (str, bool, int, float)
        self.default = self.base() if default is None and primitive else default

    def validate(self, value) -> None:
        if self.choice is not None and value not in self.choice.choices:
            raise ValueError(f"{self.name}: {value!r} is not one of {self.choice.choices}")

    def write(self, node, value) -> None:
        if _is_node_type(self.base):
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        elif self.base is bool:
            node.SetParameter(self.name, "True" if value else "False")
        else:
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if _is_node_type(self.base):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.base is bool:
            return text == "True"
        if self.base in (int, float):
            return self.base(text)
        if self.base in (pathlib.Path, pathlib.PurePath):
            return self.base(text)
        return text

    def is_in(self, node) -> bool:
        if _is_node_type(self.base):
            return node.GetNodeReferenceID(self.name) is not None
        return self.name in node.GetParameterNames()


class _Connector:
    """One widget bound to one parameter: its signal, how to read and write it."""

    def __init__(self, widget, field: _Field):
        self.widget, self.field, self._slot = widget, field, None
        kind = type(widget)
        base = field.base
        if kind in (qt.QCheckBox, ctk.ctkCheckBox) and base is bool:
            self.signal, self.read_widget, self.write_widget = widget.stateChanged, self._checked, self._set_checked
        elif kind in (qt.QComboBox, ctk.ctkComboBox) and base in (str, int, float, bool):
            if field.choice is None:
                raise RuntimeError("ComboBox connector requires the Choice annotation")
            widget.clear()
            for choice in field.choice.choices:
                widget.addItem(str(choice))
            self.signal, self.read_widget, self.write_widget = (
                widget.currentIndexChanged,
                self._choice,
                self._set_choice,
            )
        elif kind is qt.QLineEdit and base is str:
            self.signal, self.read_widget, self.write_widget = widget.textChanged, self._text, self._set_text
        elif kind is mrml_widgets.qMRMLNodeComboBox and _is_node_type(base):
            widget.nodeTypes = [base.__name__]
            self.signal = widget.currentNodeChanged
            self.read_widget, self.write_widget = widget.currentNode, widget.setCurrentNode
        elif kind is ctk.ctkPathLineEdit and base in (pathlib.Path, pathlib.PurePath):
            self.signal = widget.currentPathChanged
            self.read_widget = lambda: base(widget.currentPath)
            self.write_widget = lambda value: setattr(widget, "currentPath", str(value))
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{base}' to widget type '{kind}'")

    def _checked(self):
        return self.widget.checked

    def _set_checked(self, value):
        self.widget.checked = value

    def _choice(self):
        return self.field.choice.choices[self.widget.currentIndex]

    def _set_choice(self, value):
        self.widget.currentIndex = self.field.choice.choices.index(value)

    def _text(self):
        return self.widget.text

    def _set_text(self, value):
        if value != self.widget.text:
            self.widget.text = value

    def connect(self, slot) -> None:
        self._slot = slot
        self.signal.connect(slot)

    def disconnect(self) -> None:
        if self._slot is not None:
            self.signal.disconnect(self._slot)
            self._slot = None


class _Wrapper:
    FIELDS: typing.ClassVar[dict[str, _Field]] = {}

    def __init__(self, parameter_node):
        object.__setattr__(self, "parameterNode", parameter_node)
        object.__setattr__(self, "_guis", {})
        object.__setattr__(self, "_observers", {})
        object.__setattr__(self, "_next_tag", 0)
        object.__setattr__(self, "_updating", False)
        for field in self.FIELDS.values():
            if not field.is_in(parameter_node):
                field.write(parameter_node, field.default)

    def __getattr__(self, name):
        fields = type(self).FIELDS
        if name in fields:
            return fields[name].read(self.parameterNode)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        fields = type(self).FIELDS
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no parameter {name}")
        fields[name].validate(value)
        fields[name].write(self.parameterNode, value)

    def getValue(self, name):
        return getattr(self, name)

    def setValue(self, name, value):
        setattr(self, name, value)

    def connectGui(self, gui) -> int:
        widgets = (
            gui.findChildren(qt.QWidget) if getattr(gui, "isWidgetType", lambda: False)() else gui.__dict__.values()
        )
        bound = {widget.property(NAME_PROPERTY): widget for widget in widgets if widget.property(NAME_PROPERTY)}
        connectors = {}
        for name, widget in bound.items():
            if name not in self.FIELDS:
                raise ValueError(f"Cannot find a param with the given name: {name}")
            connectors[name] = _Connector(widget, self.FIELDS[name])
        tag = self._next_tag
        object.__setattr__(self, "_next_tag", tag + 1)
        self._guis[tag] = connectors
        for name, connector in connectors.items():
            connector.write_widget(getattr(self, name))
            connector.connect(self._gui_changed_callback(name, connector))
        self._observers[tag] = self.parameterNode.AddObserver(
            vtk.vtkCommand.ModifiedEvent, lambda caller, event: self._update_gui()
        )
        return tag

    def _gui_changed_callback(self, name, connector):
        def changed():
            with slicer.util.NodeModify(self.parameterNode):
                if not self._updating:
                    setattr(self, name, connector.read_widget())

        return changed

    def _update_gui(self) -> None:
        if self._updating:
            return
        object.__setattr__(self, "_updating", True)
        try:
            with slicer.util.NodeModify(self.parameterNode):
                for connectors in list(self._guis.values()):
                    for name, connector in connectors.items():
                        connector.write_widget(getattr(self, name))
        finally:
            object.__setattr__(self, "_updating", False)

    def disconnectGui(self, tag) -> None:
        for connector in self._guis.pop(tag, {}).values():
            connector.disconnect()
        if tag in self._observers:
            self.parameterNode.RemoveObserver(self._observers.pop(tag))

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    def StartModify(self):
        return self.parameterNode.StartModify()

    def EndModify(self, was_modified):
        return self.parameterNode.EndModify(was_modified)

    def Modified(self):
        self.parameterNode.Modified()


def parameterNodeWrapper(cls):
    annotations = typing.get_type_hints(cls, include_extras=True)
    fields = {name: _Field(name, annotation, cls.__dict__.get(name)) for name, annotation in annotations.items()}
    wrapped = type(cls.__name__, (_Wrapper,), {"FIELDS": fields, "__doc__": cls.__doc__, "__module__": cls.__module__})
    return wrapped
