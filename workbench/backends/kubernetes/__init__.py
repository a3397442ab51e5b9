"""The Kubernetes backend: cluster discovery (cluster.py), writes (apply.py), one adapter per mesh
(istio.py, linkerd.py, consul.py, gateway_api.py on the adapter.py seam), in-cluster load (loadjob.py)."""
