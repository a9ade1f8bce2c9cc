"""Creates the collection `load` on the default model and fills it with N random 128-d
vectors, 100 per request: python3 fill.py BASE_URL N [API_KEY]"""
import json, random, sys, urllib.request

base, n = sys.argv[1], int(sys.argv[2])
headers = {"Content-Type": "application/json"}
if len(sys.argv) > 3:
    headers["Authorization"] = "Bearer " + sys.argv[3]
random.seed(1)


def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req) as f:
        return json.loads(f.read())


post("/v1/collections", {"name": "load", "model": "default"})
for s in range(0, n, 100):
    items = [{"id": f"v{i}", "vector": [random.gauss(0, 1) for _ in range(128)], "metadata": {"i": i}}
             for i in range(s, min(n, s + 100))]
    post("/v1/collections/load/items", {"items": items})
print(f"filled {n}")
