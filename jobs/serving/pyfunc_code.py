"""The file MLflow logs as the registered model's code (models-from-code; never imported by the package).

`mlflow.pyfunc.load_model` puts the logged package code (model/, pipeline/, jobs/) on sys.path, then executes this
file and takes the model it sets: loading runs this source, readable in the model's artifacts, and unpickles
nothing (a cloudpickled PythonModel would run whatever bytes the artifact store holds).
"""

import mlflow.models

from jobs.serving.pyfunc_model import AffordanceModel

mlflow.models.set_model(AffordanceModel())
