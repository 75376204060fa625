"""Classroom features without gradio: the class quiz store (quiz.py) and the quiz case sets
(cases.py)."""
