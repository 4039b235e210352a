"""Teachers: the ensemble that proposes right and wrong next steps with priors, and its models."""

from azgym.prompts import RIGHT, WRONG
from azgym.teachers.ensemble import TeacherEnsemble, TeacherProposer
from azgym.teachers.loading import TIERS, load_teachers
from azgym.teachers.records import Candidate, ProposalRequest, Teacher

__all__ = [
    "RIGHT",
    "TIERS",
    "WRONG",
    "Candidate",
    "ProposalRequest",
    "Teacher",
    "TeacherEnsemble",
    "TeacherProposer",
    "load_teachers",
]
