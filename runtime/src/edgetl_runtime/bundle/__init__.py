"""The bundle: one verified zip holding the backbone members, the manifest, golden features and a shipped head.

The reader verifies every hash before use; nothing in a bundle is executed or unpickled. Enrolment
files share its safe zip reading (:mod:`edgetl_runtime.bundle.safe_zip`).
"""

from edgetl_runtime.bundle.manifest import BackboneInfo, Manifest, MemberInfo, Precision
from edgetl_runtime.bundle.reader import Bundle, requested_precision

__all__ = ["BackboneInfo", "Bundle", "Manifest", "MemberInfo", "Precision", "requested_precision"]
