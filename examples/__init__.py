"""Examples a platform engineer would copy (DESIGN.md section 1)."""
