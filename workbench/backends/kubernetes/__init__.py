"""The Kubernetes backend (backend.py): cluster discovery (cluster.py), writes (apply.py), one adapter
per mesh (istio.py, linkerd.py, consul.py, gateway_api.py on the adapter.py seam, each declaring what
it can express), in-cluster load (loadjob.py, with the k6 operator's engine in testrun.py and what
both engines' pods share in k6pod.py; samples streamed out of the pods' logs in chunks.py) and
requests as a caller from inside the mesh (probe.py)."""
