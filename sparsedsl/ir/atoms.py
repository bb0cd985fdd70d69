"""The IR's view of the atom table. The atoms are defined once, with their
signatures, meanings and bounds, in sparsedsl/atoms/; the IR's own modules
(checks, printer, graph) read the signatures through this module."""
from ..atoms import ATOMS, DYNAMIC_ATOMS, Param, arg_problem, atom_arg, atom_problem, is_dynamic  # noqa: F401
