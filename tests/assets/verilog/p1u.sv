module p1u(input a, b);
  `ASSERT_UNKNOWN(A_chk, a |-> ##1 b)
endmodule
