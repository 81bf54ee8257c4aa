"""Results pages: Markdown pages with embedded figures, generated from saved results only
(``icl_heads.pages.trtl``, ``icl_heads.pages.geometry``). Nothing below this package
imports it."""
