"""Makes the repository root importable (`import training`, `from data import ...`) when running pytest."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
