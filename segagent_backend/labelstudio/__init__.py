"""Label Studio translation: label configs, tasks and interactive context in; result JSON out.

Knows the Label Studio wire formats (see docs in README); knows nothing of models or HTTP.
"""
