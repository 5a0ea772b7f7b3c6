def test_smoke(http, served):
    r = http.get("/pipelines")
    print(r.json())
    b = served.base("regions")
    for path in [f"{b}/keys", f"{b}/keys/north/windows/current", f"{b}/keys/north/windows/latest?n=3", f"{b}/windows", f"{b}/windows/current/top?by=revenue&n=3", served.base("vehicles") + "/entries?limit=2", served.base("vehicles") + "/within?min_lat=40.7&max_lat=40.75&min_lon=-74.02&max_lon=-73.97&limit=2", "/readyz", "/metrics"]:
        r = http.get(path)
        print(path, r.status_code, r.text[:600])
