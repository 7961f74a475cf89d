"""The shipped tools' declarations, one module per tool group.

Every module here (names not starting with ``_``) is imported by :mod:`tools.registry`,
which registers each :class:`~tools.declaration.ToolDecl` it defines. To add a tool, add a
module (or a function to a group's module): see :mod:`tools.declaration`.
"""
