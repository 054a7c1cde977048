import sys, timeit, statistics
sys.path.insert(0, "bench")
import host_cost
driver = host_cost.pretend_gpu()
import torch, fusedgrad
from fusedgrad.optim import SGD
w1 = torch.randn(1000, 100, requires_grad=True); w2 = torch.randn(100, 10, requires_grad=True)
w1.grad = torch.randn_like(w1); w2.grad = torch.randn_like(w2)
kw = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
opt = SGD([w1, w2], lr=1e-6, **kw)
with fusedgrad.backend("triton"):
    opt.step()
    ts = [min(timeit.repeat(opt.step, number=500, repeat=5)) / 500 * 1e6 for _ in range(3)]
print(kw, "SGD.step %.2f us" % min(ts))
