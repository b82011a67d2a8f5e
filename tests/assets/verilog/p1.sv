`define ASSERT(n, p) n: assert property (p);
module p1(input a, b);
  `ASSERT(A_chk, a |-> b)
endmodule
